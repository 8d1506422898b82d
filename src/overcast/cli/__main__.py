from overcast.cli.main import app

app()
