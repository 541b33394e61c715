"""The HTTP surface: app factory, lifespan, routers, auth dependencies."""
