"""The logging configuration (dictConfig) of every Django process, and of Gunicorn's own loggers
(gunicorn.conf.py imports this module without Django): one format for all lines of a process.

LOG_FORMAT=json: one JSON object a line (python-json-logger), the production default, what log
shippers read; text: for eyes, the default elsewhere. Every record carries the request id, user,
task and job it belongs to (core.log_context.ContextFilter).
"""

from typing import Any

FORMATS = ("json", "text")
FIELDS = "asctime,levelname,name,process,message,request_id,user_id,task_id,job_id"


def default_format(django_env: str) -> str:
    return "json" if django_env == "production" else "text"


def logging_config(log_format: str, level: str, loggers: dict[str, Any] | None = None) -> dict:
    if log_format not in FORMATS:
        raise ValueError(f"LOG_FORMAT={log_format!r}: must be one of {', '.join(FORMATS)}")
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": "core.log_context.ContextFilter"}},
        "formatters": {
            "text": {
                "format": "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s "
                "[rid=%(request_id)s user=%(user_id)s task=%(task_id)s job=%(job_id)s]"
            },
            "json": {
                "()": "pythonjsonlogger.json.JsonFormatter",
                "fmt": FIELDS,
                "style": ",",
                "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
            },
        },
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": log_format,
                "filters": ["context"],
            }
        },
        "root": {"handlers": ["console"], "level": level},
        "loggers": loggers or {},
    }
