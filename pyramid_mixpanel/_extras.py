"""Optional dependencies: imported where they are needed, with an error that names the extra."""

from __future__ import annotations

import importlib
import types

from .exceptions import MixpanelConfigurationError

__all__ = ["optional", "require"]


def optional(module: str) -> types.ModuleType | None:
    """``module`` when it is installed, else ``None`` (for what only makes things faster)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def require(module: str, extra: str, needed_by: str) -> types.ModuleType:
    """Import ``module``, or raise an error saying which extra of ours installs it.

    :param needed_by: what needs it, as the user wrote it (a setting, an include, a command).
    :raises MixpanelConfigurationError: ``module`` is not installed.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MixpanelConfigurationError(
            f"{needed_by} needs the {module.split('.')[0]} package, which is not installed:"
            f" pip install 'pyramid_mixpanel[{extra}]'"
        ) from None
