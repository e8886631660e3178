import sys

from tests.stub_openai.server import main

sys.exit(main())
