"""Two helpers that make a lesson read like a notebook: ``md(...)`` and ``code(...)``."""


def md(text: str) -> tuple[str, str]:
    return ("md", text)


def code(text: str) -> tuple[str, str]:
    return ("code", text)
