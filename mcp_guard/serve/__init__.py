"""``mcp-guard serve``, the Streamable HTTP face: the ASGI app and its session table (``asgi``),
bearer identification (OAuth access tokens ``oauth``, grant chains), session binding, token
exchange, the approval page and worker processes.  It sits above ``proxy/``: each caller is handed
to a guard session; ``transports/`` below it only moves bytes."""
