"""An example featinv plugin package: one module per plugin kind, each with its own ``@hookimpl``.

``pyproject.toml`` declares one entry point per module in the group ``featinv``; featinv loads them all
and enables or disables the package as a whole.
"""
