"""The OGF OCCI 1.2 front end: categories and renderings, free of HTTP.

``categories`` holds the type system a client discovers through the query
interface (kinds, mixins, actions and their attribute definitions) and the
checks of client-supplied attributes against it; ``render`` turns entities,
categories and action invocations into the three renderings (``text/plain``,
``text/occi``, ``application/occi+json``) and back. Both are pure so that the
routes stay thin: parse, call the cloud, render.
"""
