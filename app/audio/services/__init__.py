"""Audio domain operations (HackSoft-style services): views, the API, the admin and Celery tasks
call these; they never touch HTTP or Celery internals.

- jobs: creating, canceling, re-running and deleting jobs, with per-user limits
- pipeline: the worker's side of a run (claim, heartbeat, process, commit)
- notifications: the finished/failed email and the daily summary
- housekeeping: beat's periodic jobs (stuck-job recovery, purge)
- events: job changes published for the live event streams
- media_store: where a job's files live (MEDIA_ROOT, or an S3 bucket) and how they are sent
- stats: read-only selectors for the operator's summary (`manage.py stats`)

The operator commands (audio/management/commands) are thin: they parse options and call these.
"""
