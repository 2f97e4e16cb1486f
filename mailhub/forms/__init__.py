"""Server-side forms: definitions, templates, field rules, CAPTCHA, intake."""
