//! What a bot's reply must look like: content and embed matchers.

use regex::Regex;

/// The parts of a Discord message the matchers look at.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplyView {
    pub content: String,
    pub embeds: Vec<EmbedView>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct EmbedView {
    pub title: String,
    pub description: String,
    pub fields: Vec<(String, String)>,
}

impl ReplyView {
    /// Nothing readable: what a bot without MESSAGE_CONTENT sees of others' messages.
    pub fn is_blank(&self) -> bool {
        self.content.is_empty() && self.embeds.is_empty()
    }

    /// The start of the reply, for a failure's detail.
    pub fn quote(&self) -> String {
        let text = if !self.content.is_empty() {
            self.content.clone()
        } else if let Some(e) = self.embeds.first() {
            format!("[embed] {} {}", e.title, e.description)
        } else {
            String::new()
        };
        let mut q: String = text.chars().take(80).collect();
        q = q.replace(['\n', '\r'], " ");
        if text.chars().count() > 80 {
            q.push('…');
        }
        format!("{q:?}")
    }
}

/// Every matcher given must match (an empty matcher matches any reply).
#[derive(Debug, Clone, Default)]
pub struct ReplyMatch {
    pub contains: Option<String>,
    pub regex: Option<Regex>,
    pub embed_title: Option<Regex>,
    pub embed_description: Option<Regex>,
    /// Field name regex and optional value regex; some field of some embed must match.
    pub embed_fields: Vec<(Regex, Option<Regex>)>,
}

impl ReplyMatch {
    pub fn is_empty(&self) -> bool {
        self.contains.is_none()
            && self.regex.is_none()
            && self.embed_title.is_none()
            && self.embed_description.is_none()
            && self.embed_fields.is_empty()
    }

    pub fn matches(&self, r: &ReplyView) -> bool {
        let content_ok = self
            .contains
            .as_ref()
            .is_none_or(|c| r.content.contains(c.as_str()))
            && self.regex.as_ref().is_none_or(|re| re.is_match(&r.content));
        let embeds_needed = self.embed_title.is_some()
            || self.embed_description.is_some()
            || !self.embed_fields.is_empty();
        let embed_ok = !embeds_needed
            || r.embeds.iter().any(|e| {
                self.embed_title
                    .as_ref()
                    .is_none_or(|re| re.is_match(&e.title))
                    && self
                        .embed_description
                        .as_ref()
                        .is_none_or(|re| re.is_match(&e.description))
                    && self.embed_fields.iter().all(|(name, value)| {
                        e.fields.iter().any(|(n, v)| {
                            name.is_match(n) && value.as_ref().is_none_or(|re| re.is_match(v))
                        })
                    })
            });
        content_ok && embed_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn help() -> ReplyView {
        ReplyView {
            content: String::new(),
            embeds: vec![EmbedView {
                title: "Interactive Help System".into(),
                description: "Use /help".into(),
                fields: vec![("Categories".into(), "Gallery, Links".into())],
            }],
        }
    }

    #[test]
    fn embed_matchers() {
        let m = ReplyMatch {
            embed_title: Some(Regex::new("^Interactive Help").unwrap()),
            embed_fields: vec![(
                Regex::new("Categories").unwrap(),
                Some(Regex::new("Links").unwrap()),
            )],
            ..Default::default()
        };
        assert!(m.matches(&help()));
        let wrong = ReplyMatch {
            embed_title: Some(Regex::new("Error").unwrap()),
            ..Default::default()
        };
        assert!(!wrong.matches(&help()));
        assert!(ReplyMatch::default().matches(&help()));
    }

    #[test]
    fn content_matchers_and_quotes() {
        let r = ReplyView {
            content: "pong! 42 ms".into(),
            embeds: vec![],
        };
        let m = ReplyMatch {
            contains: Some("pong".into()),
            regex: Some(Regex::new(r"\d+ ms").unwrap()),
            ..Default::default()
        };
        assert!(m.matches(&r));
        assert!(
            !ReplyMatch {
                contains: Some("ping".into()),
                ..Default::default()
            }
            .matches(&r)
        );
        assert_eq!(r.quote(), "\"pong! 42 ms\"");
        assert_eq!(
            help().quote(),
            "\"[embed] Interactive Help System Use /help\""
        );
    }
}
