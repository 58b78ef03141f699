from server.cli import serve

serve()
