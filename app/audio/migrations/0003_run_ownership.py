"""Runs owned by their task (Job.task_id), queued_at for the recovery sweep, the notification
claim; the sweep runs every minute (it was every 5 minutes, left alone if an operator changed it)."""

from django.db import migrations, models
from django.db.models import F
from django.utils import timezone


def forwards(apps, schema_editor):
    Job = apps.get_model("audio", "Job")
    # Jobs queued before this change have no owning task: the sweep sends them a new one.
    Job.objects.filter(status="queued", queued_at__isnull=True).update(queued_at=F("created_at"))
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    every_minute, _ = IntervalSchedule.objects.get_or_create(every=1, period="minutes")
    PeriodicTask.objects.filter(
        task="audio.recover_stuck_jobs", interval__every=5, interval__period="minutes"
    ).update(interval=every_minute)
    # Tell a running beat to reload its schedule.
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": timezone.now()})


class Migration(migrations.Migration):
    dependencies = [
        ("audio", "0002_periodic_tasks"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [
        migrations.AddField(
            model_name="job",
            name="notification_claimed_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="job",
            name="queued_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="job",
            name="task_id",
            field=models.CharField(blank=True, default="", max_length=64),
        ),
        migrations.RunPython(forwards, migrations.RunPython.noop),
    ]
