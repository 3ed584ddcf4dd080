"""The CLI verbs that need torch (build, slice, demo), registered as entry points `verb.<name>`
(pyproject.toml) so that edge's CLI lists them without importing converters (edge/plugins.py).
Like edge/commands, each module must stay cheap to import: heavy imports go inside run()."""
