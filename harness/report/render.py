"""Render the report: one self-contained HTML file (Jinja2), and a PDF of the same HTML.

The HTML embeds its figures as data URIs and its styles and table-sorting script inline, so
it reads offline and can be mailed as one file. The PDF is WeasyPrint's rendering of that
same HTML under the template's print styles (title page, page numbers, a table of contents
with page numbers). Jinja2 autoescaping is on for the whole template: every string that came
from MLflow (run names, params, tags, errors, the grid spec) is shown as text, never as markup.
"""

from __future__ import annotations

import base64
import logging
import math
from pathlib import Path
from typing import Any

import jinja2

TEMPLATES = Path(__file__).parent / "templates"


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,  # every {{ value }} is escaped, whatever the file name
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=num, ttt=ttt, seconds=seconds, pvalue=pvalue, data_uri=data_uri,
                       interval=interval)  # fmt: skip
    return env


def render_html(context: dict[str, Any]) -> str:
    return environment().get_template("report.html.j2").render(**context)


def write_pdf(html: str, path: Path) -> None:
    """The PDF from the same HTML (WeasyPrint ignores the script; print styles apply)."""
    for name in ("weasyprint", "fontTools"):
        logging.getLogger(name).setLevel(logging.ERROR)  # font-subsetting chatter
    import weasyprint  # imported here: it loads Pango, which only the PDF needs

    weasyprint.HTML(string=html, base_url=str(path.parent)).write_pdf(path)


# --------------------------------------------------------------------------- filters


def num(value: Any, digits: int = 4) -> str:
    """A number to `digits` decimals; an em dash for a missing value."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}f}"


def ttt(value: float, digits: int = 0) -> str:
    if value is None or math.isnan(value):
        return "—"
    return "not reached" if math.isinf(value) else f"{value:,.{digits}f}"


def seconds(value: float) -> str:
    if value is None or math.isnan(value):
        return "—"
    return "not reached" if math.isinf(value) else f"{value:.1f} s"


def interval(low: Any, high: Any, digits: int = 4) -> str:
    """ "0.7012 – 0.7534"; "none" when there is no interval (its row says why)."""
    if num(low, digits) == "—" or num(high, digits) == "—":
        return "none"
    return f"{num(low, digits)} – {num(high, digits)}"


def pvalue(value: float) -> str:
    if value is None or math.isnan(value):
        return "—"
    return "< 0.0001" if value < 1e-4 else f"{value:.4f}"


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()
