import sys

from tests.stub_fcm.server import main

sys.exit(main())
