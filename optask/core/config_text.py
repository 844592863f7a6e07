"""Settings as a person reads them: the documented `.env.example`, and the variables accepted but ignored."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from optask.core.config import _GROUPS, Settings, env_name

#: Variables optask accepts (the seed's .env has them) but does not act on, with why; `optask config` says so
#: in one line each when one is set, so none silently does nothing.
IGNORED: dict[tuple[str, str], str] = {
    ("service", "processing_batch_size"): "work is batched by minutes, not rows: a backfill chunk is 75 minutes of "
    "one index-day and a CSV write is one append per minute (or per batch)",
}


def ignored_settings(settings: Settings) -> list[str]:
    """One line for each variable that was set but that optask accepts and ignores."""
    out = []
    for (group_name, field_name), why in IGNORED.items():
        group = getattr(settings, group_name)
        if field_name in group.model_fields_set:
            out.append(f"{env_name(type(group), field_name)} is accepted and ignored: {why}")
    return out


@dataclass(frozen=True)
class DocumentedSetting:
    group: str
    group_doc: str  # the first line of the group's docstring
    variable: str
    default: str  # as written in .env.example: empty for none
    description: str


def documented_settings() -> list[DocumentedSetting]:
    """Every setting, by group, with its default and description: the one source of `.env.example` and of the
    docs' settings reference."""
    out = []
    for group_name, cls in _GROUPS.items():
        group_doc = (cls.__doc__ or "").strip().splitlines()[0]
        for field_name, info in cls.model_fields.items():
            default = info.default
            if isinstance(default, SecretStr):
                default = default.get_secret_value()
            elif isinstance(default, tuple):
                default = ",".join(default)
            elif isinstance(default, Path):
                default = str(default)
            out.append(DocumentedSetting(group_name, group_doc, env_name(cls, field_name),
                                         "" if default is None else str(default), info.description or ""))
    return out


def env_example_text() -> str:
    """The documented `.env.example`: every variable with its description and default, by group."""
    lines = ["# optask settings: copy to .env and edit. Every variable is optional; shown with its default.",
             ""]
    group = None
    for s in documented_settings():
        if s.group != group:
            if group is not None:
                lines.append("")
            group = s.group
            lines.append(f"# --- {s.group}: {s.group_doc}")
        lines.append(f"# {s.description}")
        lines.append(f"{s.variable}={s.default}")
    lines.append("")
    return "\n".join(lines)
