"""The web app (`opencanvas serve`): gallery, generation with provenance, and the human-evaluation arena.

Pages are Jinja2 templates with autoescaping over a JSON API; the only scripts are static files (the
Content-Security-Policy allows no inline script and no other origin).
"""
