"""A small inventory module: the example file of `phi-lsp demo`."""

import json
import os


def load_items(path):
    with open(path) as f:
        return json.load(f)


def save_items(path, items):
    with open(path, "w") as f:
        json.dump(items, f)


class Stack:
    def __init__(self):
        self.items = []

    def push(self, item):
        self.items.append(item)

    def pop(self):
        return self.items.pop()


def add(a, b):
    return a + b


def find_user(db, name):
    query = "SELECT * FROM users WHERE name = '" + name + "'"
    return db.execute(query)


def read_config(path, defaults={}):
    try:
        with open(path) as f:
            defaults.update(json.load(f))
    except:
        pass
    return defaults


def total_size(folder):
    return sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder))
