"""``mcp-guard serve``, the Streamable HTTP face: the ASGI app (``asgi``), its session table
(``table``), the streams of each session (``reply_host``, ``streams``), bearer identification
(``resource``: OAuth access tokens by ``oauth``, grant chains), session binding, token exchange,
the approval page and worker processes.  It sits above ``proxy/``: each caller is handed to a guard
session; ``transports/`` below it only moves bytes."""
