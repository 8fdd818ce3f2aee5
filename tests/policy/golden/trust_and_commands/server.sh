#!/bin/sh
exec mcp-server-time
