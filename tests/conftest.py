pytest_plugins = ["pg", "cloud"]
