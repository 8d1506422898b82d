pytest_plugins = ["pg", "cloud", "stores", "qemus", "receiver", "etcd", "netns"]
