-- What deciding a push did to its user's conversation state (issue 27:
-- the conversation view shows what each step set or cleared): NULL when
-- it changed nothing, else {"set": {...}, "clear": [...]}. Written in the
-- transaction that marks the push decided.
ALTER TABLE inbound_messages ADD COLUMN state_change json;
