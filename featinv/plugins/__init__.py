"""Built-in plugins. They are loaded through the same pluggy path as third-party plugins."""

DEFAULT_PLUGINS: tuple[str, ...] = (
    "featinv.plugins.backbones",
    "featinv.plugins.bases",
    "featinv.plugins.encoders",
    "featinv.plugins.decomposers",
    "featinv.plugins.analyses",
)
