"""Monthly exports that run by themselves.

``model`` (the schedule and its runs) and ``timing`` (when a run falls due) are pure rules;
``manage`` (create, change, pause, resume, delete) and ``run`` (the scheduler's claim and
run of due schedules) are use cases over ``Resources``; ``pause_link`` builds the one-click
link of the email. The API, the CLI and the worker's cron call them.
"""
