"""SQLite rebuilt chat_turn when 0009 added ``Turn.context`` (a column with a default), and a
rebuilt table loses its triggers: the search index (0008) stopped following new turns. Put the
turn triggers back and index the turns made since. PostgreSQL's GIN indexes were not affected.
"""

from django.db import migrations

from chat.migrations import _search_sql

_TURN_TRIGGERS = ("chat_turn_search_ai", "chat_turn_search_au", "chat_turn_search_ad")

FORWARDS = [
    *[f"DROP TRIGGER IF EXISTS {name}" for name in _TURN_TRIGGERS],
    *_search_sql.TURN_TRIGGERS,
    # Turns made while the triggers were gone, with the answers of their finished runs.
    """INSERT INTO chat_turn_search(rowid, prompt, answers)
        SELECT t.id, t.prompt, coalesce((
            SELECT group_concat(r.answer, ' ') FROM chat_run r WHERE r.turn_id = t.id AND r.status != 'running'
        ), '') FROM chat_turn t WHERE t.id NOT IN (SELECT rowid FROM chat_turn_search)""",
]


class Migration(migrations.Migration):
    dependencies = [("chat", "0010_evaluations")]

    operations = [_search_sql.RunSQLOn("sqlite", FORWARDS, migrations.RunSQL.noop)]
