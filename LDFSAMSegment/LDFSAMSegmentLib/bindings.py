"""Which widgets of a module's .ui show which parameter, read from their dynamic properties (no Slicer, no Qt).

``SlicerParameterName`` widgets are bound by Slicer's ``parameterNodeWrapper``. Path fields are bound by the
modules themselves through ``LDFSAMPathParameter``: the wrapper stores a ``pathlib.Path``, whose empty value
reads back as "." and would show as "." in the field, so the modules keep paths as plain strings.
"""

from __future__ import annotations

from typing import Dict, Iterable, Optional

PARAMETER_PROPERTY = "SlicerParameterName"
PATH_PROPERTY = "LDFSAMPathParameter"


def bound_widgets(widgets: Iterable[object], prop: str = PARAMETER_PROPERTY) -> Dict[str, object]:
    """{parameter name: widget} of the widgets whose dynamic property ``prop`` names a parameter.

    ``widgets`` are Qt widgets (anything with ``property(name)``); ValueError when two widgets name one parameter.
    """
    mapping: Dict[str, object] = {}
    for widget in widgets:
        reader = getattr(widget, "property", None)
        name = reader(prop) if callable(reader) else None
        if not name:
            continue
        name = str(name)
        if name in mapping and mapping[name] is not widget:
            raise ValueError(f"{prop} {name!r} is set on two widgets: {_name(mapping[name])} and {_name(widget)}")
        mapping[name] = widget
    return mapping


def path_text(value: Optional[object]) -> str:
    """The text a path field shows for a stored path: empty for no path (None, "" or the "." of ``Path("")``)."""
    text = "" if value is None else str(value)
    return "" if text in ("", ".") else text


def _name(widget: object) -> str:
    getter = getattr(widget, "objectName", None)
    name = getter() if callable(getter) else getter
    return str(name or widget)
