from django.db import migrations, models

# Standard SQL: the same view on PostgreSQL and SQLite. CAST keeps the content the text the database
# holds (jsonb's text form on PostgreSQL, the stored text on SQLite), so nothing decodes it on a read.
CREATE_VIEW = """
CREATE VIEW core_served_fortune AS
SELECT r.id AS id, r.user_id AS user_id, r.for_date AS for_date, r.generation_id AS generation_id,
       r.source AS source, g.created_at AS generated_at, CAST(g.content AS text) AS content_json
FROM core_fortuneresult r
JOIN core_fortunegeneration g ON g.id = r.generation_id
"""


class Migration(migrations.Migration):

    dependencies = [
        ('core', '0005_celery_chunks'),
    ]

    operations = [
        migrations.CreateModel(
            name='ServedFortune',
            fields=[
                ('id', models.BigIntegerField(primary_key=True, serialize=False)),
                ('user_id', models.BigIntegerField()),
                ('for_date', models.DateField()),
                ('generation_id', models.BigIntegerField()),
                ('source', models.CharField(choices=[('batch', 'batch'), ('on_demand', 'on demand')], max_length=16)),
                ('generated_at', models.DateTimeField()),
                ('content_json', models.TextField()),
            ],
            options={
                'db_table': 'core_served_fortune',
                'managed': False,
            },
        ),
        migrations.RunSQL(CREATE_VIEW, reverse_sql="DROP VIEW core_served_fortune"),
    ]
