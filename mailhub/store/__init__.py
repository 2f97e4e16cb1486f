"""Redis: key names, the task store and its Lua scripts, batching, clients, the embedded Valkey."""
