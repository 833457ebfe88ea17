"""One module per view; the tab labels in display order."""
TABS = ["Probe", "Pruned channels", "Outputs", "Latency", "Compare methods", "Export"]
