"""The migration plan to a space: gathered read-only from the live database (measured index builds
included), modeled as a checklist and rendered as Markdown."""
