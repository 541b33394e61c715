"""A Django project of one module per role, served by gunicorn in the tests."""
