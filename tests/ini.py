"""What the command-line tests' .ini files share: the logging sections and the app factory."""

from __future__ import annotations

import typing as t

#: The logging sections of a test .ini file (``pmixpanel`` sets logging up from them).
LOGGING = """\
[loggers]
keys = root

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = WARNING
handlers = console

[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = generic

[formatter_generic]
format = %(levelname)s %(message)s
"""


def app(global_config: dict[str, str], **settings: str) -> t.Any:
    """The app the test .ini files load (``use = call:tests.<module>:app``)."""
    from pyramid.config import Configurator

    with Configurator(settings=settings) as config:
        config.include("pyramid_mixpanel")
    return config.make_wsgi_app()
