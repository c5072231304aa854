//! Fuzz body: any text either fails to parse as an endpoint, with an error naming the
//! input, or parses to an endpoint that prints back exactly and reparses to itself.

use tether_transport::Endpoint;

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match text.parse::<Endpoint>() {
        Ok(ep) => {
            assert_eq!(ep.to_string(), text);
            assert_eq!(ep.to_string().parse::<Endpoint>().as_ref(), Ok(&ep));
        }
        Err(e) => assert_eq!(e.input, text),
    }
}
