"""The dashboard's two HTML pages: sign-in, and the app shell the script fills in.

Server-rendered, every value escaped; the page's data (product, scopes, the
CSRF token) travels in attributes the script reads, never in inline script,
so the Content-Security-Policy can forbid inline script altogether.
"""

from __future__ import annotations

from html import escape

from labs_analytics import __version__

STATIC = "/dashboard/static"  # below the deployment's path prefix (``base``)

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def _head(title: str, base: str) -> str:
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{escape(base)}{STATIC}/dashboard.css?v={__version__}">
</head>
"""


def sign_in_page(base: str, *, error: str | None = None, notice: str | None = None) -> str:
    message = ""
    if error:
        message = f'<p class="error" role="alert">{escape(error)}</p>'
    elif notice:
        message = f'<p class="notice" role="status">{escape(notice)}</p>'
    return (
        _head("Sign in · Labs Analytics", base)
        + f"""<body class="sign-in">
<main>
<h1>Labs Analytics</h1>
<p>Sign in with an API key that has the <code>read</code> or <code>admin</code> scope.
It stays on the server: your browser keeps only a session cookie.</p>
{message}
<form method="post" action="{escape(base)}/dashboard/sign-in">
<label for="key">API key</label>
<input id="key" name="key" type="password" autocomplete="off" spellcheck="false"
 required maxlength="200" placeholder="lak_…">
<button type="submit">Sign in</button>
</form>
<p class="hint">No key yet? <code>labs-analytics keys create --product my-app --scope read</code>
prints one.</p>
</main>
</body>
</html>
"""
    )


def app_page(
    base: str,
    *,
    product: str,
    signed_in_as: str,
    csrf: str,
    is_admin: bool,
    is_share: bool,
    expires_at: str,
) -> str:
    who = "a shared link (read-only)" if is_share else f"key {signed_in_as}"
    admin_links = (
        """<a href="?view=pipeline" data-view="pipeline">Pipeline</a>
<a href="?view=sharing" data-view="sharing">Sharing</a>"""
        if is_admin
        else ""
    )
    return (
        _head(f"{product} · Labs Analytics", base)
        + f"""<body data-product="{escape(product)}" data-admin="{str(is_admin).lower()}"
 data-share="{str(is_share).lower()}" data-csrf="{escape(csrf)}"
 data-expires="{escape(expires_at)}" data-base="{escape(base)}">
<a class="skip" href="#view">Skip to the panels</a>
<header>
<h1>Labs Analytics <span class="product">{escape(product)}</span></h1>
<p class="who">Signed in with {escape(who)}</p>
<form method="post" action="{escape(base)}/dashboard/sign-out">
<input type="hidden" name="csrf" value="{escape(csrf)}">
<button type="submit">Sign out</button>
</form>
</header>
<nav aria-label="Views">
<a href="?view=overview" data-view="overview">Overview</a>
<a href="?view=api" data-view="api">API health</a>
<a href="?view=funnel" data-view="funnel">Funnel</a>
<a href="?view=retention" data-view="retention">Retention</a>
<a href="?view=user" data-view="user">User summary</a>
<a href="?view=live" data-view="live">Live</a>
{admin_links}
</nav>
<form id="controls" aria-label="Date range and filters">
<label>Range
<select name="range">
<option value="today">Today</option>
<option value="yesterday">Yesterday</option>
<option value="7d">Last 7 days</option>
<option value="30d">Last 30 days</option>
<option value="90d">Last 90 days</option>
<option value="month">This month</option>
<option value="year">This year</option>
<option value="all">All time</option>
<option value="custom">Custom…</option>
</select></label>
<label class="custom">From <input type="date" name="from"></label>
<label class="custom">To <input type="date" name="to"></label>
<label>Time zone <input name="tz" size="18" maxlength="64" autocomplete="off"></label>
<label>Event <input name="event" size="14" maxlength="200" placeholder="any"></label>
<label>Property <input name="fkey" size="10" maxlength="200" placeholder="key"></label>
<label>= <input name="fval" size="10" maxlength="200" placeholder="value"></label>
<button type="submit">Apply</button>
</form>
<main id="view" tabindex="-1" aria-live="polite"></main>
<script src="{escape(base)}{STATIC}/dashboard.js?v={__version__}"></script>
</body>
</html>
"""
    )


def message_page(base: str, title: str, text: str) -> str:
    return (
        _head(f"{title} · Labs Analytics", base)
        + f"""<body class="sign-in">
<main>
<h1>{escape(title)}</h1>
<p>{escape(text)}</p>
<p><a href="{escape(base)}/dashboard">Go to the dashboard</a></p>
</main>
</body>
</html>
"""
    )
