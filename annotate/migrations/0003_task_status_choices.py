# Export and Simulation share ImportJob's status choices (annotate.models.BackgroundTask).

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("annotate", "0002_item_lane"),
    ]

    operations = [
        migrations.AlterField(
            model_name="export",
            name="status",
            field=models.CharField(
                choices=[
                    ("queued", "queued"),
                    ("running", "running"),
                    ("succeeded", "succeeded"),
                    ("failed", "failed"),
                ],
                default="queued",
                max_length=10,
            ),
        ),
        migrations.AlterField(
            model_name="simulation",
            name="status",
            field=models.CharField(
                choices=[
                    ("queued", "queued"),
                    ("running", "running"),
                    ("succeeded", "succeeded"),
                    ("failed", "failed"),
                ],
                default="queued",
                max_length=10,
            ),
        ),
    ]
