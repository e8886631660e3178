# The nightly run and the Celery chunk get names that say one thing ("batch" is the OpenAI Batch API's
# word alone): BatchRun -> NightlyRun, BatchChunk -> CeleryChunk. The tables are renamed with them;
# the index and constraint names keep their old spelling (renaming them would rebuild them for nothing).
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("core", "0008_batchrun_in_flight")]

    operations = [
        migrations.RenameModel(old_name="BatchRun", new_name="NightlyRun"),
        migrations.RenameModel(old_name="BatchChunk", new_name="CeleryChunk"),
    ]
