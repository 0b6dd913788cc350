"""Built-in analyses plugins, one module per built-in (see featinv.registry.DEFAULT_PLUGINS)."""
