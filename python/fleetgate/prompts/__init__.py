"""Prompt tools: opt-in compression of instructions and system prompts, and a report on how
well each prompt template uses OpenAI's prompt caching. Pure logic: no I/O, no network.

    from fleetgate.prompts import Compressor, compress_body, LayoutTracker, render_report

    compressor = Compressor("gpt-4.1-mini")
    done = compress_body(compressor, "/chat/completions", body)   # (new body, tokens saved) or None

    tracker = LayoutTracker()
    tracker.observe("support-bot", "/chat/completions", body)     # per request
    tracker.usage("support-bot", answer["usage"])                 # per answer
    print(render_report(tracker.report()))

Compression only removes phrases from a fixed filler lexicon and redundant whitespace;
numbers, negations, names, code, quotes, URLs and template variables are never changed.
The layout report names templates by their key and speaks in token counts only.
"""

from fleetgate.prompts.body import compress_body
from fleetgate.prompts.compress import Compressed, Compressor
from fleetgate.prompts.layout import LayoutTracker, TemplateLayout, analyze, flatten, render_report
from fleetgate.prompts.savings import Savings, TemplateSaving

__all__ = ["Compressed", "Compressor", "LayoutTracker", "Savings", "TemplateLayout", "TemplateSaving", "analyze",
           "compress_body", "flatten", "render_report"]
