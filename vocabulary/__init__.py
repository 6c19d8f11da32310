"""The vocabulary every part of lis speaks, defined once; it imports nothing of lis.

- ``errors``: the one error tree, each error with its HTTP status.
- ``connectors``: the Greengrass ML connectors as AWS documents them (ARNs,
  platforms, algorithms, parameter tables).
- ``names``: Ray Serve names, network defaults, environment variables, folders,
  artifact file names.
- ``limits``: what a request may be and how much work a replica takes on.
- ``specs`` and ``feedback_specs``: the typed, validated configuration.
- ``wire``: what crosses between the ingress and a replica.

Importing this package loads nothing: import the module you need. ``errors``,
``connectors``, ``names``, ``limits`` and ``wire`` use only the standard library,
so the SDK can import them on a machine without pydantic or Ray.
"""

__all__: list[str] = []
