pytest_plugins = ["pg"]
