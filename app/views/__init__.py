"""One module per view; the tab labels in display order (the three stages of Probe Pruning first)."""
TABS = ["Probe", "History", "Pruned channels", "Why this head", "Outputs", "Latency", "Compare methods", "Side by side",
        "Zero-shot", "Export"]
