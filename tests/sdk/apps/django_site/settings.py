"""Settings of the test Django project: the analytics middleware and nothing else.

The client takes its key and URL from LABS_ANALYTICS_API_KEY and
LABS_ANALYTICS_URL. Its flush interval is an hour and a batch holds 1000
events, so that what the server stores was delivered by the drain at
shutdown, not by the timer or a full batch.
"""

SECRET_KEY = "test-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "tests.sdk.apps.django_site.urls"
INSTALLED_APPS: list[str] = []
DATABASES: dict[str, object] = {}
USE_TZ = True
MIDDLEWARE = ["labs_analytics_client.django.AnalyticsMiddleware"]
LABS_ANALYTICS = {
    "flush_interval": 3600,
    "batch_size": 1000,
    "exclude_routes": ["/healthz/"],
    "user": "tests.sdk.apps.django_site.urls.user_of",
}
