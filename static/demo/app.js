// The chat client: see static/demo/index.html.
