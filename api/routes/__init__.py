"""The HTTP routes, one module per area; ``api.app`` includes them."""

from api.problems import problem_responses

# Errors any write can answer with (documented on every write route).
WRITE_ERRORS = problem_responses(400, 401, 403, 404, 409, 413, 422, 503)
