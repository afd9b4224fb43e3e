"""The page templates of review/templates (the report, the gallery, the case index, the review app's pages), rendered
by Jinja2 with autoescaping on, so that every value that reaches a page is escaped in one place."""

from __future__ import annotations

from pathlib import Path


def page_template(name: str):
    """A template from review/templates, autoescaped, failing on an undefined value; ``utc`` formats an ISO time as
    'YYYY-MM-DD HH:MM UTC'."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["utc"] = lambda iso: f"{str(iso)[:16].replace('T', ' ')} UTC" if iso else ""
    return env.get_template(name)
