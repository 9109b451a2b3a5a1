"""SQL shared by the search migrations (0008, and 0011 which restores the turn triggers).

A migration that makes SQLite rebuild chat_turn or chat_run (adding a column with a default,
changing a column) drops their triggers: it must create them again, as 0011 does.
"""

from django.db import migrations

TURN_TRIGGERS = [
    """CREATE TRIGGER chat_turn_search_ai AFTER INSERT ON chat_turn BEGIN
        INSERT INTO chat_turn_search(rowid, prompt, answers) VALUES (new.id, new.prompt, '');
    END""",
    """CREATE TRIGGER chat_turn_search_au AFTER UPDATE OF prompt ON chat_turn BEGIN
        UPDATE chat_turn_search SET prompt = new.prompt WHERE rowid = new.id;
    END""",
    """CREATE TRIGGER chat_turn_search_ad AFTER DELETE ON chat_turn BEGIN
        DELETE FROM chat_turn_search WHERE rowid = old.id;
    END""",
]


class RunSQLOn(migrations.RunSQL):
    """RunSQL for one database vendor only ("sqlite", "postgresql"); a no-op on the others."""

    def __init__(self, vendor, sql, reverse_sql):
        super().__init__(sql, reverse_sql)
        self.vendor = vendor

    def deconstruct(self):
        name, args, kwargs = super().deconstruct()
        return name, [self.vendor, kwargs.pop("sql"), kwargs.pop("reverse_sql")], kwargs

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == self.vendor:
            super().database_forwards(app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == self.vendor:
            super().database_backwards(app_label, schema_editor, from_state, to_state)
