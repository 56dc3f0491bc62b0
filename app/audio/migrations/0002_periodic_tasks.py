"""The housekeeping schedule, created in django-celery-beat's tables so operators can see and
edit it in the admin (intervals, crontabs, enabled)."""

from django.db import migrations

SCHEDULE = [
    # name, task, kind, spec
    (
        "Recover stuck audio jobs",
        "audio.recover_stuck_jobs",
        "interval",
        {"every": 5, "period": "minutes"},
    ),
    (
        "Purge expired audio files",
        "audio.purge_expired_files",
        "crontab",
        {"minute": "30", "hour": "3"},
    ),
    (
        "Daily audio summary to admins",
        "audio.send_daily_summary",
        "crontab",
        {"minute": "0", "hour": "7"},
    ),
]


def create(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    CrontabSchedule = apps.get_model("django_celery_beat", "CrontabSchedule")
    for name, task, kind, spec in SCHEDULE:
        if kind == "interval":
            schedule, _ = IntervalSchedule.objects.get_or_create(**spec)
            extra = {"interval": schedule}
        else:
            schedule, _ = CrontabSchedule.objects.get_or_create(
                day_of_week="*", day_of_month="*", month_of_year="*", timezone="UTC", **spec
            )
            extra = {"crontab": schedule}
        PeriodicTask.objects.get_or_create(name=name, defaults={"task": task, **extra})


def remove(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTask.objects.filter(name__in=[name for name, *_ in SCHEDULE]).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("audio", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]
    operations = [migrations.RunPython(create, remove)]
