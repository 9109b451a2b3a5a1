"""Full text search over turn prompts and fused answers (chat.conversations.conversation_list_for_user).

SQLite: an FTS5 table, one row per turn (rowid = the turn's id) holding its prompt and the answers
of its finished runs, kept up to date by triggers. PostgreSQL: GIN indexes on the expressions the
selector's SearchVector builds. Each operation runs only on its own database.
"""

from django.db import migrations

from chat.migrations._search_sql import TURN_TRIGGERS, RunSQLOn

SQLITE_FORWARDS = [
    "CREATE VIRTUAL TABLE chat_turn_search USING fts5(prompt, answers)",
    *TURN_TRIGGERS,
]

# A turn's answers: those of its finished runs (every version). A run's answer counts once the
# run is over, so the checkpoints of a streaming run do not rewrite the index every second.
_REINDEX_ANSWERS = """
    UPDATE chat_turn_search SET answers = coalesce((
        SELECT group_concat(answer, ' ') FROM chat_run
        WHERE chat_run.turn_id = {TURN} AND chat_run.status != 'running'
    ), '') WHERE rowid = {TURN};
"""

SQLITE_FORWARDS += [
    f"""CREATE TRIGGER chat_run_search_ai AFTER INSERT ON chat_run WHEN new.status != 'running' BEGIN
        {_REINDEX_ANSWERS.replace("{TURN}", "new.turn_id")}
    END""",
    f"""CREATE TRIGGER chat_run_search_au AFTER UPDATE OF answer, status ON chat_run
        WHEN new.status != 'running' OR old.status != 'running' BEGIN
        {_REINDEX_ANSWERS.replace("{TURN}", "new.turn_id")}
    END""",
    f"""CREATE TRIGGER chat_run_search_ad AFTER DELETE ON chat_run BEGIN
        {_REINDEX_ANSWERS.replace("{TURN}", "old.turn_id")}
    END""",
    # The turns and runs stored before this migration.
    """INSERT INTO chat_turn_search(rowid, prompt, answers)
        SELECT t.id, t.prompt, coalesce((
            SELECT group_concat(r.answer, ' ') FROM chat_run r WHERE r.turn_id = t.id AND r.status != 'running'
        ), '') FROM chat_turn t""",
]

SQLITE_BACKWARDS = [
    *[
        f"DROP TRIGGER IF EXISTS {name}"
        for name in (
            "chat_turn_search_ai",
            "chat_turn_search_au",
            "chat_turn_search_ad",
            "chat_run_search_ai",
            "chat_run_search_au",
            "chat_run_search_ad",
        )
    ],
    "DROP TABLE IF EXISTS chat_turn_search",
]

# The same expressions as SearchVector("prompt", config="simple") and SearchVector("answer", …).
POSTGRES_FORWARDS = [
    """CREATE INDEX chat_turn_prompt_search ON chat_turn
        USING gin (to_tsvector('simple'::regconfig, COALESCE(prompt, '')))""",
    """CREATE INDEX chat_run_answer_search ON chat_run
        USING gin (to_tsvector('simple'::regconfig, COALESCE(answer, '')))""",
]
POSTGRES_BACKWARDS = [
    "DROP INDEX IF EXISTS chat_turn_prompt_search",
    "DROP INDEX IF EXISTS chat_run_answer_search",
]


class Migration(migrations.Migration):
    dependencies = [
        ("chat", "0007_spend_ledger"),
    ]

    operations = [
        RunSQLOn("sqlite", SQLITE_FORWARDS, SQLITE_BACKWARDS),
        RunSQLOn("postgresql", POSTGRES_FORWARDS, POSTGRES_BACKWARDS),
    ]
