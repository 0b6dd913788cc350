"""Built-in bases plugins, one module per built-in (see featinv.registry.DEFAULT_PLUGINS)."""
