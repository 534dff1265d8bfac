//! HTML answers where a file was expected: Google Drive's interstitial pages, and every other
//! page a server sends instead of weights (which is never saved as weights).
//!
//! Drive (as gdown 6.x reads it): a large file first answers with a "virus scan warning" page
//! whose `<form id="download-form" action="https://drive.usercontent.google.com/download">`
//! carries hidden inputs (`id`, `export`, `confirm=t`, `uuid`, ...); submitting them (GET)
//! gives the file. Quota, sign-in and not-found pages are recognised and named.

/// What an HTML page means.
#[derive(Debug, Clone, PartialEq)]
pub enum Page {
    /// Drive's warning page: the URL to fetch instead.
    Confirm(String),
    /// "Too many users have viewed or downloaded this file recently".
    Quota,
    /// A sign-in wall: the file is not shared publicly.
    SignIn,
    /// The file does not exist (or was removed).
    NotFound,
    /// Any other page.
    Other(String),
}

/// Classify an HTML page fetched from `base_url`.
pub fn classify(html: &str, base_url: &str) -> Page {
    let lower = html.to_ascii_lowercase();
    if lower.contains("too many users have viewed or downloaded this file recently")
        || lower.contains("quota exceeded")
    {
        return Page::Quota;
    }
    if let Some(url) = confirm_url(html, base_url) {
        return Page::Confirm(url);
    }
    if lower.contains("accounts.google.com/servicelogin")
        || lower.contains("<title>sign in")
        || lower.contains("sign in - google accounts")
    {
        return Page::SignIn;
    }
    if lower.contains("file not found")
        || lower.contains("404. that’s an error")
        || lower.contains("404. that's an error")
    {
        return Page::NotFound;
    }
    Page::Other(title(html).unwrap_or_default())
}

fn title(html: &str) -> Option<String> {
    let lower = html.to_ascii_lowercase();
    let start = lower.find("<title>")? + 7;
    let end = start + lower[start..].find("</title>")?;
    Some(decode_entities(html[start..end].trim()))
}

/// The URL Drive's `download-form` submits to, with all its hidden inputs.
pub fn confirm_url(html: &str, base_url: &str) -> Option<String> {
    let lower = html.to_ascii_lowercase();
    let marker = lower
        .find("id=\"download-form\"")
        .or_else(|| lower.find("id='download-form'"))?;
    let form_start = lower[..marker].rfind("<form")?;
    let form_tag_end = form_start + lower[form_start..].find('>')?;
    let form_end = lower[form_tag_end..]
        .find("</form>")
        .map(|i| form_tag_end + i)
        .unwrap_or(html.len());
    let action = attr(&html[form_start..=form_tag_end], "action").unwrap_or_default();
    let mut params = Vec::new();
    let body = &html[form_tag_end..form_end];
    let body_lower = &lower[form_tag_end..form_end];
    let mut at = 0;
    while let Some(i) = body_lower[at..].find("<input") {
        let start = at + i;
        let end = start
            + body_lower[start..]
                .find('>')
                .unwrap_or(body_lower.len() - start - 1);
        let tag = &body[start..=end.min(body.len() - 1)];
        if let Some(name) = attr(tag, "name") {
            params.push((name, attr(tag, "value").unwrap_or_default()));
        }
        at = end + 1;
    }
    let base = reqwest::Url::parse(base_url).ok()?;
    let mut url = base.join(&action).ok()?;
    url.query_pairs_mut()
        .clear()
        .extend_pairs(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    Some(url.to_string())
}

/// An attribute's value in a tag (`name="x"` or `name='x'`), entities decoded.
fn attr(tag: &str, name: &str) -> Option<String> {
    let lower = tag.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find(name) {
        let at = from + i;
        from = at + name.len();
        let before_ok = at == 0 || lower.as_bytes()[at - 1].is_ascii_whitespace();
        let rest = lower[at + name.len()..].trim_start();
        if !before_ok || !rest.starts_with('=') {
            continue;
        }
        let value_start = tag.len() - rest.len() + 1;
        let v = tag[value_start..].trim_start();
        let (quote, v) = match v.chars().next()? {
            q @ ('"' | '\'') => (q, &v[1..]),
            _ => (' ', v),
        };
        let end = v.find([quote, '>']).unwrap_or(v.len());
        return Some(decode_entities(&v[..end]));
    }
    None
}

fn decode_entities(s: &str) -> String {
    s.replace("&amp;", "&")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
}

#[cfg(test)]
mod tests {
    use super::*;

    const WARNING: &str = r#"<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head>
<body><div class="uc-main"><p class="uc-warning-caption">Google Drive can't scan this file for viruses.</p>
<form id="download-form" action="https://drive.usercontent.google.com/download" method="get">
<input type="submit" id="uc-download-link" class="goog-inline-block jfk-button jfk-button-action" value="Download anyway"/>
<input type="hidden" name="id" value="1budFSoQqZz1Idyej-R4E6kUnL8CGtdyu">
<input type="hidden" name="export" value="download">
<input type="hidden" name="confirm" value="t">
<input type="hidden" name="uuid" value="5f1e-aa&amp;b"></form></div></body></html>"#;

    #[test]
    fn drive_warning_page_gives_the_form_url() {
        let Page::Confirm(url) =
            classify(WARNING, "https://drive.google.com/uc?export=download&id=1b")
        else {
            panic!("not recognised");
        };
        assert_eq!(
            url,
            "https://drive.usercontent.google.com/download?id=1budFSoQqZz1Idyej-R4E6kUnL8CGtdyu&export=download&confirm=t&uuid=5f1e-aa%26b"
        );
    }

    #[test]
    fn relative_actions_and_other_pages() {
        let html = WARNING.replace("https://drive.usercontent.google.com/download", "/download");
        let Page::Confirm(url) = classify(&html, "http://127.0.0.1:8000/uc?id=x") else {
            panic!()
        };
        assert!(url.starts_with("http://127.0.0.1:8000/download?id="));
        let quota = "<html><title>Google Drive - Quota exceeded</title><p class='uc-error-subcaption'>Too many users have viewed or downloaded this file recently. Please try accessing the file again later.</p></html>";
        assert_eq!(classify(quota, "https://x/"), Page::Quota);
        assert_eq!(
            classify(
                "<html><title>Sign in - Google Accounts</title></html>",
                "https://x/"
            ),
            Page::SignIn
        );
        assert_eq!(
            classify("<html><title>Maintenance</title></html>", "https://x/"),
            Page::Other("Maintenance".into())
        );
    }
}
