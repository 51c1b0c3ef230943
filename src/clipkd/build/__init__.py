"""The build layer: config -> library objects, used by the engine and by every command alike.

Encoders, teachers and the distiller (``models``), data sources and streams and stored views (``data``), the
evaluation hooks a config asks for (``hooks``), the device (``device``), the checks that build nothing
(``checks``), preflight (``preflight``), a run's inputs by content (``inputs``) and the reinforced-data build
(``reinforce``). The only layer that reads :class:`~clipkd.config.TrainConfig` sections into objects; it imports
the library packages below it (eval, export, reinforce, data, distill, losses, models) and nothing above.
"""
