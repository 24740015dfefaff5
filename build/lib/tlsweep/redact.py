"""Secrets never reach a run, a log or an error line: passwords, tokens and `user:pass@` in URIs are masked.

What tlsweep records that a person typed (the command line, overrides, the config, a tracking URI, an
error's text) passes through here first. A value is masked where its key names a secret (`password`,
`token`, `secret`, `api_key`, `credential`, ...), in `key=value` and `key: value` text alike, and where a
URI carries credentials (`https://user:pass@host`, `?token=...`).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

MASK = "***"
# a key that names a secret: MLFLOW_TRACKING_PASSWORD, db.passwd, api-key, AWS_SECRET_ACCESS_KEY, auth_token
# (a whole word of the key: `tokenizer` is not `token`)
_WORD = r"(?<![A-Za-z0-9])(?:passw(?:or)?d|pwd|secret|token|api[_-]?key|access[_-]?key|credentials?|private[_-]?key)(?![A-Za-z0-9])"
SECRET_KEY = rf"[\w.\-]*?{_WORD}[\w.\-]*"
_SECRET_KEY = re.compile(SECRET_KEY, re.IGNORECASE)
# scheme://user:password@host -> scheme://user:***@host
_URI_PASSWORD = re.compile(r"(\b[a-zA-Z][\w+.\-]*://[^\s/:@'\"]*):([^\s@/'\"]*)@")
# key=value or key: value (a command line, an override, YAML, JSON, a query string) where the key names a
# secret; a quoted value is masked to its closing quote
_ASSIGNED = re.compile(
    rf"(?P<key>{SECRET_KEY})(?P<keyquote>['\"]?)(?P<sep>\s*[=:]\s*)"
    r"(?:(?P<quote>['\"])(?P<quoted>.*?)(?P=quote)|(?P<value>[^\s&'\",}\]]+))",
    re.IGNORECASE)

# a whole quoted word holding one, as shlex quotes a command line: '+x.PASSWORD=two words' -> '+x.PASSWORD=***'
_QUOTED_WORD = re.compile(rf"(?P<quote>['\"])(?P<head>[^'\"\s]*?{_WORD}[\w.\-]*\s*[=:]\s*)[^'\"]*(?P=quote)",
                          re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with every secret it holds masked."""
    if not text:
        return text
    text = _URI_PASSWORD.sub(rf"\1:{MASK}@", text)
    text = _QUOTED_WORD.sub(lambda found: f"{found['quote']}{found['head']}{MASK}{found['quote']}", text)
    return _ASSIGNED.sub(_masked, text)


def _masked(found: re.Match) -> str:
    quote = found["quote"] or ""
    return f"{found['key']}{found['keyquote']}{found['sep']}{quote}{MASK}{quote}"


def redact_value(key: str, value: Any) -> Any:
    """A param's or tag's value as it may be stored: masked whole when its key names a secret."""
    if _SECRET_KEY.fullmatch(key):
        return MASK
    return redact(value) if isinstance(value, str) else value


def redact_mapping(values: Mapping[str, Any]) -> dict[str, Any]:
    """Params or tags with every secret masked, keys unchanged."""
    return {key: redact_value(key, value) for key, value in values.items()}
