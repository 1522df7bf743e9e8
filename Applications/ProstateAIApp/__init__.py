"""ProstateAI applications: the `prostateai` command (`cli`), the full demo (`demo`) and all benchmarks
(`bench`). The top layer: it may import every Lib; nothing imports it.
"""
